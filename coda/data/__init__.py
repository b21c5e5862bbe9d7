"""Images in, prepared folders out: ``demo.prepare_demo`` (the bundled photos) and
``folder.prepare_folder`` (image folders, paper scale), the Datasets that read a prepared folder
(``datasets``), and fitting any image into the tokenizer's square (``framing``). Nothing is imported
here, so a stage that reads a prepared folder does not import (nor depend on) its preparation."""
