"""The MLflow Model Registry side of the zoo: naming, tags, pyfunc loading, bulk registration."""
from .codec import decode_embedding, encode_embedding
from .naming import zoo_model_name
from .pyfunc import load_module
from .register import RegisterRecord, register_zoo

__all__ = ["decode_embedding", "encode_embedding", "zoo_model_name", "load_module", "RegisterRecord",
           "register_zoo"]
