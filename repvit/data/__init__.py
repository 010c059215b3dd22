"""The shared data layer beneath the capability packages: COCO-format annotations read one way
(``coco``) and the record of bad inputs every dataset check fills (``bad_inputs``)."""
