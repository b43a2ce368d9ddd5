"""The test modules, one per concern; tests.py gathers them.

TensorFlow is imported here, quietly, before any test module imports a library
module that needs it.
"""

from charrnn import tf_setup

tf_setup.import_tensorflow()
