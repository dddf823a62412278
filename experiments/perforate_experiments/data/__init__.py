"""Data loaders for the experiments (torch + numpy at import; RDKit/sklearn/SciPy when used)."""

from __future__ import annotations

from perforate.demo.idx import read_idx, write_idx

from .emnist import EMNIST_BALANCED_CLASSES, load_emnist_balanced
from .fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from .paths import default_data_dir
from .physionet import (
    PHYSIONET_VARIABLES,
    PhysioNetDataset,
    PhysioNetNormalizer,
    PhysioNetRecords,
    PhysioNetSplits,
    collate_physionet,
    load_physionet,
    load_physionet_splits,
    physionet_splits,
)
from .splits import DatasetSplits
from .tox21 import (
    TOX21_TASKS,
    GraphBatch,
    MolGraph,
    Tox21Splits,
    collate_graphs,
    load_tox21,
    masked_bce_with_logits,
    mean_roc_auc,
    per_task_roc_auc,
)

__all__ = [
    "EMNIST_BALANCED_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "PHYSIONET_VARIABLES",
    "TOX21_TASKS",
    "DatasetSplits",
    "GraphBatch",
    "MolGraph",
    "PhysioNetDataset",
    "PhysioNetNormalizer",
    "PhysioNetRecords",
    "PhysioNetSplits",
    "Tox21Splits",
    "collate_graphs",
    "collate_physionet",
    "default_data_dir",
    "load_emnist_balanced",
    "load_fashion_mnist",
    "load_physionet",
    "load_physionet_splits",
    "load_tox21",
    "masked_bce_with_logits",
    "mean_roc_auc",
    "per_task_roc_auc",
    "physionet_splits",
    "read_idx",
    "write_idx",
]
