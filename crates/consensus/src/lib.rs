//! consensus (under construction).
