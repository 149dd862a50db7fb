"""tans-registry: search a model zoo held in MLflow for the network to start from on a new dataset."""

__version__ = "0.1.0"
