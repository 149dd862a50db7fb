"""The learned parts: query encoder, model encoder, accuracy predictor (``models``), the feature backbone
(``backbone``), the losses (``losses``), and their MLflow pyfunc models (``flavour``)."""
