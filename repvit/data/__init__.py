"""The shared data layer beneath the capability packages: COCO-format annotations read one way
(``coco``), the record of bad inputs every dataset check fills (``bad_inputs``), images in and
mask drawings out (``images``), video frames (``video``), point and box prompts (``prompts``) and
the bounded output folder of the demos (``output_files``)."""
