//! proto (under construction).
