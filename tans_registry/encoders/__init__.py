"""The meta-contrastive encoders: query encoder, model encoder, accuracy predictor."""
