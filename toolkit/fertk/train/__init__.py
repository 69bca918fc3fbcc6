"""Training loops (FER CNN, StarGAN); import the submodule you need."""
