//! Reading nameko-style YAML configuration files.
