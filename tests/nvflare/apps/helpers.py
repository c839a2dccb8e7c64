import numpy as np


def mean_of(weights):
    return float(np.mean(weights))
