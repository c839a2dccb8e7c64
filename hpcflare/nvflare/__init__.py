"""NVFlare job.py files, unchanged: ``hpcflare nvflare JOB.py [ARGS]`` (or ``python -m hpcflare.nvflare``).

The job side's NVFlare module names (recipes, Envs, ``add_experiment_tracking``, the FedJob / ScriptRunner API)
resolve to the modules here, as the client side's names already do in client ranks
(:mod:`hpcflare.client.nvflare_compat`). Each class keeps NVFlare's keywords and defaults and builds an hpcflare
recipe; a keyword with no meaning here is accepted and named once on stderr, one that would change results
without an hpcflare equivalent is a ConfigError saying what to do instead.
"""
