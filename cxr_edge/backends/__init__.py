"""Backends run a patch batch through the patch model. They know nothing of saliency."""
