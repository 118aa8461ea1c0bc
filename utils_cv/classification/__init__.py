"""Image classification: data, data check, model specification, training, saved models, predictors, service, widgets."""
