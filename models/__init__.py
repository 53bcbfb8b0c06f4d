"""rnnlab's PyTorch side: the adding problem, the Elman and LSTM networks, and one trainer."""

from models.data import Split, Splits, adding_sequence, adding_targets, make_split, make_splits
from models.networks import MODEL_KINDS, ElmanRNN, LSTMModel, build_model, init_parameters
from models.population import Population, build_population, member_seed, model_seed
from models.scalar import scalar_rnn
from models.training import (
    EpochReport,
    Evaluation,
    History,
    Member,
    Prepared,
    TrainConfig,
    TrainResult,
    evaluate,
    fit,
    halving_epochs,
    predict,
    prepare,
    resolve_device,
    train,
    verdict,
)

__all__ = [
    "MODEL_KINDS",
    "ElmanRNN",
    "EpochReport",
    "Evaluation",
    "History",
    "LSTMModel",
    "Member",
    "Population",
    "Prepared",
    "Split",
    "Splits",
    "TrainConfig",
    "TrainResult",
    "adding_sequence",
    "adding_targets",
    "build_model",
    "build_population",
    "evaluate",
    "fit",
    "halving_epochs",
    "init_parameters",
    "make_split",
    "make_splits",
    "member_seed",
    "model_seed",
    "predict",
    "prepare",
    "resolve_device",
    "scalar_rnn",
    "train",
    "verdict",
]
