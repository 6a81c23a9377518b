"""Teachers: the embedded tiny teacher trained from scratch (``train``), a VLM grafted from an LLM and
tuned in two phases (``vlm``), and the choice among tuned runs on validation (``pick``)."""
