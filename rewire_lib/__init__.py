"""rewire: label-free contrastive rewiring of pre-trained speech encoders (SpeechBrain recipes)."""
