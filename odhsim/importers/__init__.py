"""Configurations users already have (llm-d EndpointPickerConfig files, KServe InferenceServices) turned into
odhsim's scenario sections."""
