"""The bundled demo model: synthetic captioned shapes, the pixel-level adherence score, and the trainer.

These live in the engine (not scripts/) because the training tests of issue 7 reuse the dataset and the score.
"""
