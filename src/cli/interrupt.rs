//! Ctrl-C (SIGINT) and SIGTERM (SIGHUP too): remove this process's temporary files, say where
//! the work stopped, exit 130. Without this the half-written `.NAME.<pid>.tmp` of the output
//! being written stays in the output folder.
//!
//! The `ctrlc` crate (pure Rust over `nix`; its `termination` feature adds SIGTERM and SIGHUP)
//! runs the handler on its own thread, so the handler may lock, print and remove files.

use std::sync::{Arc, Mutex};

use trellis2::export::atomic::remove_temporaries;

use super::exit;

/// Where a command is, in words (`item 2 of 5 (s/chair.png), 1 done`), for the line printed
/// when it is interrupted. Cloned into the handler; the command updates it as it goes.
#[derive(Clone, Default)]
pub struct Position(Arc<Mutex<String>>);

impl Position {
    pub fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Installs the handler for the rest of the process; `position` tells it where to say the
/// work stopped. A second install (a handler exists already) is a no-op.
pub fn install(command: &'static str, position: Position) {
    let _ = ctrlc::set_handler(move || {
        let removed = remove_temporaries();
        let at = position.get();
        let at = if at.is_empty() {
            String::new()
        } else {
            format!(" at {at}")
        };
        let files = match removed {
            0 => String::new(),
            1 => "; 1 unfinished output removed".to_string(),
            n => format!("; {n} unfinished outputs removed"),
        };
        eprintln!("interrupted: {command} stopped{at}{files}");
        std::process::exit(exit::INTERRUPTED.into());
    });
}
