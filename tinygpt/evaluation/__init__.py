"""Evaluation: how good a model is. Loss over tokenized data (`data_loss`), every validation story scored from
its own beginning (`story_loss`), and the figures of written stories (`quality`), for training, sharing, bench/
and the page."""
