"""The project's demo page (Gradio): RepViT-SAM on images and, where ``sam2`` is installed, EdgeTAM
tracking on videos. It sits above the capabilities it shows (``repvit.sam``, ``repvit.edgetam``),
beside export and benchmarking; ``repvit sam demo`` serves it. Gradio is imported only when a page
is built."""
