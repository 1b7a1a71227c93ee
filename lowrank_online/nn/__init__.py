"""A small neural network written against the array API that drives the curvature adapter.

Dense layers with ReLU / tanh / sigmoid, softmax cross-entropy, squared error and binary
cross-entropy losses, a hand-written backward pass that exposes the K-factor statistics
``(a, g)`` of every layer, Monte-Carlo Fisher target sampling, SGD with momentum and Adam, and
a training loop that uses :class:`~lowrank_online.curvature.KFACPreconditioner`. The same code
trains on NumPy and, on a GPU, on CuPy.
"""

from .data import Dataset, load_dataset, mlp_layer_statistics
from .losses import BinaryCrossEntropy, SoftmaxCrossEntropy, SquaredError, get_loss
from .mlp import MLP, LayerStatistics
from .optim import SGD, Adam
from .train import History, evaluate, load_training_state, save_training_state, train

__all__ = [
    "MLP", "SGD", "Adam", "BinaryCrossEntropy", "Dataset", "History", "LayerStatistics",
    "SoftmaxCrossEntropy", "SquaredError", "evaluate", "get_loss",
    "load_dataset", "load_training_state", "mlp_layer_statistics", "save_training_state", "train",
]
