"""The engine: Lightning stages (teacher, student, baseline) and the pipeline that chains them."""
