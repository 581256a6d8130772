"""Data: sources turn files into records, labels are encoded from train, and a torch Dataset
decodes modalities on demand."""
