//! See the module table in `map`.
