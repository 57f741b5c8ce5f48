//! `augur-predict`: generate synthetic traces, import real failure data, train, evaluate,
//! tune, score and benchmark the failure predictors.

use std::time::Instant;

use anyhow::{Context, Result};
use augur_predictor::import::{import_backblaze, BackblazeImport};
use augur_predictor::model::Model;
use augur_predictor::progress::Progress;
use clap::Parser;

mod cli;
mod commands;
mod output;
use cli::{Cli, Command, ImportSource};
use output::{bench, read_trace, score};

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let progress = Progress::stderr();
    match cli.command {
        Command::Generate(args) => commands::generate_cmd(args, &progress)?,
        Command::Train(args) => commands::train_cmd(args, &progress)?,
        Command::Eval(args) => commands::eval_cmd(args, &progress)?,
        Command::Tune(args) => commands::tune_cmd(args, &progress)?,
        Command::Score {
            model,
            traces,
            every,
            node,
            min_risk,
            json,
        } => {
            let model = Model::load(&model)?;
            let trace = read_trace(&traces, &progress)?;
            score(&model, &trace, every, node.as_deref(), min_risk, json)?;
        }
        Command::Import {
            source:
                ImportSource::Backblaze {
                    file,
                    out,
                    healthy,
                    seed,
                },
        } => {
            let t = Instant::now();
            let settings = BackblazeImport {
                healthy,
                seed,
                ..Default::default()
            };
            let summary =
                import_backblaze(&file, &out, &settings, &progress.bar("writing drives"))?;
            println!(
                "{} rows, {} drives in the input; wrote {} drives ({} failed), {} drive-day samples in {} files to {} in {:.1} s",
                summary.rows,
                summary.drives_in_input,
                summary.drives,
                summary.failed,
                summary.samples,
                summary.files,
                out.display(),
                t.elapsed().as_secs_f64()
            );
        }
        Command::Bench { model, iterations } => {
            let model = Model::load(&model)?;
            bench(&model, iterations.max(10));
        }
    }
    Ok(())
}
