//! Local GitHub stand-in.
