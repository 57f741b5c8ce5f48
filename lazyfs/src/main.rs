//! `augur-lazyfs`: mount the power-loss filesystem, or send it a command.
//!
//! ```text
//! augur-lazyfs mount --backing DIR --mount MNT [--control SOCKET] [--threads N]
//! augur-lazyfs crash --control SOCKET        # drop every unsynced byte; answers when done
//! augur-lazyfs checkpoint --control SOCKET   # persist every unsynced byte
//! augur-lazyfs status --control SOCKET       # what is unsynced
//! ```
//!
//! `mount` runs in the foreground until SIGTERM, SIGINT or SIGHUP (then it unmounts) or until
//! someone unmounts MNT.

use anyhow::Context;
use augur_lazyfs::{mount, request, Command, MountOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "augur-lazyfs", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount BACKING at MOUNT and serve it until signalled or unmounted.
    Mount {
        /// Directory holding the files ("the disk").
        #[arg(long)]
        backing: PathBuf,
        /// Where the filesystem appears (an existing directory).
        #[arg(long = "mount")]
        mountpoint: PathBuf,
        /// Unix socket for control commands.
        #[arg(long)]
        control: Option<PathBuf>,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Cut the power: drop every unsynced byte. Prints what was dropped.
    Crash(Control),
    /// Persist every unsynced byte, as sync(1). Prints what was written.
    Checkpoint(Control),
    /// Print what is unsynced.
    Status(Control),
}

#[derive(clap::Args)]
struct Control {
    /// The mount's control socket.
    #[arg(long)]
    control: PathBuf,
    /// Seconds to wait for the answer.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

fn send(c: &Control, cmd: Command) -> anyhow::Result<()> {
    let stats = request(&c.control, cmd, Duration::from_secs(c.timeout))?;
    println!(
        "{}: files={} bytes={}",
        cmd.word(),
        stats.files,
        stats.bytes
    );
    Ok(())
}

fn serve(opts: MountOptions) -> anyhow::Result<()> {
    // Modes asked for by the filesystem's callers (already masked by their umask) apply
    // as they are.
    rustix::process::umask(rustix::fs::Mode::empty());
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })?;
    let mounted = mount(&opts)?;
    tracing::info!(backing = %opts.backing.display(), mount = %opts.mountpoint.display(), "mounted");
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(sig) => {
                tracing::info!(signal = sig, "unmounting");
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) if !mounted.is_finished() => {}
            Err(_) => {
                tracing::info!("unmounted from outside");
                break;
            }
        }
    }
    mounted.unmount()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Mount {
            backing,
            mountpoint,
            control,
            threads,
        } => serve(MountOptions {
            backing,
            mountpoint,
            control,
            threads,
        }),
        Cmd::Crash(c) => send(&c, Command::Crash),
        Cmd::Checkpoint(c) => send(&c, Command::Checkpoint),
        Cmd::Status(c) => send(&c, Command::Status),
    }
}
