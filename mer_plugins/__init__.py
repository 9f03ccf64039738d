"""The built-in plug-ins of mer, registered through the ``mer`` entry-point group like any other."""
