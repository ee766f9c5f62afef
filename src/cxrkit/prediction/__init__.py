"""Prediction on many files: batched, parallel decoding, resumable CSV output."""
