"""Tabular federated learning: data helpers, XGBoost (histogram, bagging, vertical), k-means, PSI.

Nothing here imports xgboost or scikit-learn at module level: they are optional extras (``hpcflare[tabular]``).
"""
