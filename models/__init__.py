"""rnnlab's PyTorch side: the adding problem, the Elman and LSTM networks, and one trainer."""

from models.data import Split, Splits, adding_sequence, adding_targets, make_split, make_splits
from models.networks import MODEL_KINDS, ElmanRNN, LSTMModel, build_model, init_parameters
from models.scalar import scalar_rnn
from models.training import (
    History,
    Metrics,
    TrainConfig,
    TrainResult,
    evaluate,
    fit,
    model_seed,
    predict,
    resolve_device,
    train,
)

__all__ = [
    "MODEL_KINDS",
    "ElmanRNN",
    "History",
    "LSTMModel",
    "Metrics",
    "Split",
    "Splits",
    "TrainConfig",
    "TrainResult",
    "adding_sequence",
    "adding_targets",
    "build_model",
    "evaluate",
    "fit",
    "init_parameters",
    "make_split",
    "make_splits",
    "model_seed",
    "predict",
    "resolve_device",
    "scalar_rnn",
    "train",
]
