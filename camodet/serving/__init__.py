"""Serving: shipping a trained model. From the bottom up: the export folder's format
(export_format.py), fetching a model from the Hugging Face Hub (fetch.py), the Predictor
(predictor.py), predicting images and folders (predict.py) and videos (video.py), exporting
safetensors / ONNX (export.py), publishing to the Hub (hub.py, above export) and the web
demo (app.py). Imports config, data, models, runs and evaluation's metrics; never the engine."""
