"""`finetune serve`: a model behind HTTP (FastAPI on uvicorn), with dynamic batching. Needs finetune[serve]."""
