"""Training algorithms (scikit-learn, PyTorch/torchvision, transformers, Keras), one registry dict.

Heavy frameworks are imported inside the modules that use them, never at package import.
"""
