//! Process signals for both runtimes: SIGTERM and SIGINT stop the gateway
//! gracefully, SIGHUP reloads the configuration. A small thread turns them into
//! calls the runtime forwards to its event loop.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Stop,
    Reload,
}

pub fn watch(on: impl Fn(Signal) + Send + 'static) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            on(if s == SIGHUP {
                Signal::Reload
            } else {
                Signal::Stop
            });
        }
    });
    Ok(())
}
