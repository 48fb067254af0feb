"""Data sets and patient-level splits: folders of radiographs with masks and labels."""

from cxrssl.data import adapters
from cxrssl.data.datasets import DatasetWarning, FolderDataset, Record, sample
from cxrssl.data.splits import (
    SplitTable,
    check_no_leak,
    kfold,
    make_split,
    read_split_csv,
    write_split_csv,
)

__all__ = [
    "DatasetWarning",
    "FolderDataset",
    "Record",
    "SplitTable",
    "adapters",
    "check_no_leak",
    "kfold",
    "make_split",
    "read_split_csv",
    "sample",
    "write_split_csv",
]
