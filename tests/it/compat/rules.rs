//! rules placeholder
