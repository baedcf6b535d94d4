"""Publishing to the Hugging Face Hub: dataset and model repo folders with their cards (dataset.py, model.py,
cards.py), the upload (upload.py) and the stage (stage.py). The config blocks are in config.py."""
