"""The only door to the MLflow Model Registry.

``names`` (every registered-model name), ``client`` (the boundary: paging reads, error wrapping),
``codec`` (embedding tags), ``pyfunc`` (the zoo network's MLflow model), ``register`` (the
``zoo register`` stage, superseded versions, embedding tags), ``models`` (encoders and backbone, the
champion alias, downloads), ``index`` (the zoo as cached arrays, constrained search).
"""
