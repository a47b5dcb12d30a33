"""One module per guide. Modules import only numpy, OpenCV, Pillow and click at import time;
torch and friends are imported inside ``load`` so that listing or running Canny stays fast."""
