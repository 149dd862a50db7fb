"""Datasets for the model zoo: loading (archives, image folders, names) and class-subset tasks."""
from tans_registry.data.loading import (
    DEFAULT_DATA_DIR,
    ENV_DATA_DIR,
    IMAGE_SUFFIXES,
    ImageDataset,
    describe_dataset,
    list_datasets,
    load_dataset,
    resolve_data_dir,
    stratified_split,
    stratified_subsample,
)
from tans_registry.data.manifest import dataset_roles, report_datasets
from tans_registry.data.tasks import class_subset_tasks, make_groups

__all__ = [
    "dataset_roles",
    "report_datasets",
    "DEFAULT_DATA_DIR",
    "ENV_DATA_DIR",
    "IMAGE_SUFFIXES",
    "ImageDataset",
    "class_subset_tasks",
    "describe_dataset",
    "list_datasets",
    "load_dataset",
    "make_groups",
    "resolve_data_dir",
    "stratified_split",
    "stratified_subsample",
]
