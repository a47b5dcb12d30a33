"""One module per guide, each declaring itself as data (see ``guides.annotators.base``). Modules import only
numpy, OpenCV and Pillow at import time (never click or the CLI); torch and friends are imported inside
``load`` and the stages, so that listing or running Canny stays fast."""
