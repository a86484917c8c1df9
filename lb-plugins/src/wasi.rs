//! The WASI a plugin gets: exactly the interfaces a Rust `std` guest imports, implemented
//! here, synchronously, with nothing to block on (`lb-plugins/wit/sandbox.wit`). There are no
//! arguments and no environment; stdin is closed; what a plugin writes to stdout or stderr
//! (a panic message, say) goes to Gantry's log through the same rate limit as `host.log`;
//! `exit` ends the call as a trap; random bits come from the instance's generator.
//!
//! (wasmtime-wasi's synchronous bindings block on a Tokio runtime inside every blocking
//! stream call, which panics on the proxy's worker threads; a plugin's `println!` must never
//! be able to do that.)

use wasmtime::component::{Resource, ResourceTable};

use super::host::HostState;

/// Bytes one call may ask of `get-random-bytes`: a plugin must not make the host allocate
/// without bound.
const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// Pending output kept per stream until a newline; longer lines are cut.
const MAX_LINE: usize = 4 << 10;

#[allow(missing_docs, unreachable_pub)]
mod generated {
    wasmtime::component::bindgen!({
        world: "sandbox",
        path: "wit",
        imports: { default: trappable },
        with: {
            "wasi:io/error.error": super::IoError,
            "wasi:io/poll.pollable": super::Pollable,
            "wasi:io/streams.input-stream": super::InputStream,
            "wasi:io/streams.output-stream": super::OutputStream,
            "wasi:cli/terminal-input.terminal-input": super::TerminalInput,
            "wasi:cli/terminal-output.terminal-output": super::TerminalOutput,
        },
    });
}

use generated::wasi::cli::{environment, exit, stderr, stdin, stdout};
use generated::wasi::cli::{
    terminal_input, terminal_output, terminal_stderr, terminal_stdin, terminal_stdout,
};
use generated::wasi::io::{error, poll, streams};
use generated::wasi::random::{insecure, insecure_seed, random};

pub(crate) use generated::Sandbox as SandboxWorld;

/// An I/O error value (never produced: every stream here either works or is closed).
#[allow(unreachable_pub)] // re-exported by the generated bindings
pub struct IoError;
/// A pollable: always ready, nothing here ever waits.
#[allow(unreachable_pub)] // re-exported by the generated bindings
pub struct Pollable;
/// Stdin: closed.
#[allow(unreachable_pub)] // re-exported by the generated bindings
pub struct InputStream;
/// Stdout or stderr, routed to the log line by line.
#[allow(unreachable_pub)] // re-exported by the generated bindings
pub struct OutputStream {
    stderr: bool,
    line: Vec<u8>,
}
/// A terminal (never handed out: plugins have none).
#[allow(unreachable_pub)] // re-exported by the generated bindings
pub struct TerminalInput;
/// A terminal (never handed out: plugins have none).
#[allow(unreachable_pub)] // re-exported by the generated bindings
pub struct TerminalOutput;

type Result<T> = wasmtime::Result<T>;

fn closed<T>() -> Result<std::result::Result<T, streams::StreamError>> {
    Ok(Err(streams::StreamError::Closed))
}

impl HostState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn new_output(&mut self, stderr: bool) -> Result<Resource<OutputStream>> {
        Ok(self.table().push(OutputStream {
            stderr,
            line: Vec::new(),
        })?)
    }

    /// Takes `bytes` written by the plugin; complete lines go to the log.
    fn write_output(&mut self, stream: &Resource<OutputStream>, bytes: &[u8]) -> Result<()> {
        let mut lines = Vec::new();
        let output = self.table().get_mut(stream)?;
        let stderr = output.stderr;
        for &byte in bytes {
            if byte == b'\n' {
                lines.push(std::mem::take(&mut output.line));
            } else if output.line.len() < MAX_LINE {
                output.line.push(byte);
            }
        }
        for line in lines {
            self.log_output(stderr, &String::from_utf8_lossy(&line));
        }
        Ok(())
    }
}

impl error::Host for HostState {}

impl error::HostError for HostState {
    fn to_debug_string(&mut self, _error: Resource<IoError>) -> Result<String> {
        Ok(String::new())
    }

    fn drop(&mut self, error: Resource<IoError>) -> Result<()> {
        self.table().delete(error)?;
        Ok(())
    }
}

impl poll::Host for HostState {
    fn poll(&mut self, pollables: Vec<Resource<Pollable>>) -> Result<Vec<u32>> {
        // Everything is always ready.
        Ok((0..u32::try_from(pollables.len()).unwrap_or(u32::MAX)).collect())
    }
}

impl poll::HostPollable for HostState {
    fn ready(&mut self, _pollable: Resource<Pollable>) -> Result<bool> {
        Ok(true)
    }

    fn block(&mut self, _pollable: Resource<Pollable>) -> Result<()> {
        Ok(())
    }

    fn drop(&mut self, pollable: Resource<Pollable>) -> Result<()> {
        self.table().delete(pollable)?;
        Ok(())
    }
}

impl streams::Host for HostState {}

impl streams::HostInputStream for HostState {
    fn read(
        &mut self,
        _s: Resource<InputStream>,
        _len: u64,
    ) -> Result<std::result::Result<Vec<u8>, streams::StreamError>> {
        closed()
    }

    fn blocking_read(
        &mut self,
        _s: Resource<InputStream>,
        _len: u64,
    ) -> Result<std::result::Result<Vec<u8>, streams::StreamError>> {
        closed()
    }

    fn skip(
        &mut self,
        _s: Resource<InputStream>,
        _len: u64,
    ) -> Result<std::result::Result<u64, streams::StreamError>> {
        closed()
    }

    fn blocking_skip(
        &mut self,
        _s: Resource<InputStream>,
        _len: u64,
    ) -> Result<std::result::Result<u64, streams::StreamError>> {
        closed()
    }

    fn subscribe(&mut self, _s: Resource<InputStream>) -> Result<Resource<Pollable>> {
        Ok(self.table().push(Pollable)?)
    }

    fn drop(&mut self, stream: Resource<InputStream>) -> Result<()> {
        self.table().delete(stream)?;
        Ok(())
    }
}

impl streams::HostOutputStream for HostState {
    fn check_write(
        &mut self,
        _s: Resource<OutputStream>,
    ) -> Result<std::result::Result<u64, streams::StreamError>> {
        Ok(Ok(MAX_LINE as u64))
    }

    fn write(
        &mut self,
        s: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> Result<std::result::Result<(), streams::StreamError>> {
        self.write_output(&s, &contents)?;
        Ok(Ok(()))
    }

    fn blocking_write_and_flush(
        &mut self,
        s: Resource<OutputStream>,
        contents: Vec<u8>,
    ) -> Result<std::result::Result<(), streams::StreamError>> {
        self.write_output(&s, &contents)?;
        Ok(Ok(()))
    }

    fn flush(
        &mut self,
        _s: Resource<OutputStream>,
    ) -> Result<std::result::Result<(), streams::StreamError>> {
        Ok(Ok(()))
    }

    fn blocking_flush(
        &mut self,
        _s: Resource<OutputStream>,
    ) -> Result<std::result::Result<(), streams::StreamError>> {
        Ok(Ok(()))
    }

    fn subscribe(&mut self, _s: Resource<OutputStream>) -> Result<Resource<Pollable>> {
        Ok(self.table().push(Pollable)?)
    }

    fn write_zeroes(
        &mut self,
        _s: Resource<OutputStream>,
        _len: u64,
    ) -> Result<std::result::Result<(), streams::StreamError>> {
        Ok(Ok(()))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        _s: Resource<OutputStream>,
        _len: u64,
    ) -> Result<std::result::Result<(), streams::StreamError>> {
        Ok(Ok(()))
    }

    fn splice(
        &mut self,
        _s: Resource<OutputStream>,
        _src: Resource<InputStream>,
        _len: u64,
    ) -> Result<std::result::Result<u64, streams::StreamError>> {
        closed()
    }

    fn blocking_splice(
        &mut self,
        _s: Resource<OutputStream>,
        _src: Resource<InputStream>,
        _len: u64,
    ) -> Result<std::result::Result<u64, streams::StreamError>> {
        closed()
    }

    fn drop(&mut self, stream: Resource<OutputStream>) -> Result<()> {
        let output = self.table().delete(stream)?;
        if !output.line.is_empty() {
            self.log_output(output.stderr, &String::from_utf8_lossy(&output.line));
        }
        Ok(())
    }
}

impl environment::Host for HostState {
    fn get_environment(&mut self) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }

    fn get_arguments(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn initial_cwd(&mut self) -> Result<Option<String>> {
        Ok(None)
    }
}

impl exit::Host for HostState {
    fn exit(&mut self, _status: std::result::Result<(), ()>) -> Result<()> {
        // A plugin cannot end the process; ending its call is a trap the host handles.
        Err(wasmtime::format_err!("the plugin called exit"))
    }
}

impl stdin::Host for HostState {
    fn get_stdin(&mut self) -> Result<Resource<InputStream>> {
        Ok(self.table().push(InputStream)?)
    }
}

impl stdout::Host for HostState {
    fn get_stdout(&mut self) -> Result<Resource<OutputStream>> {
        self.new_output(false)
    }
}

impl stderr::Host for HostState {
    fn get_stderr(&mut self) -> Result<Resource<OutputStream>> {
        self.new_output(true)
    }
}

impl terminal_input::Host for HostState {}

impl terminal_input::HostTerminalInput for HostState {
    fn drop(&mut self, terminal: Resource<TerminalInput>) -> Result<()> {
        self.table().delete(terminal)?;
        Ok(())
    }
}

impl terminal_output::Host for HostState {}

impl terminal_output::HostTerminalOutput for HostState {
    fn drop(&mut self, terminal: Resource<TerminalOutput>) -> Result<()> {
        self.table().delete(terminal)?;
        Ok(())
    }
}

impl terminal_stdin::Host for HostState {
    fn get_terminal_stdin(&mut self) -> Result<Option<Resource<TerminalInput>>> {
        Ok(None)
    }
}

impl terminal_stdout::Host for HostState {
    fn get_terminal_stdout(&mut self) -> Result<Option<Resource<TerminalOutput>>> {
        Ok(None)
    }
}

impl terminal_stderr::Host for HostState {
    fn get_terminal_stderr(&mut self) -> Result<Option<Resource<TerminalOutput>>> {
        Ok(None)
    }
}

fn random_bytes(state: &mut HostState, len: u64) -> Result<Vec<u8>> {
    if len > MAX_RANDOM_BYTES {
        return Err(wasmtime::format_err!(
            "the plugin asked for {len} random bytes (at most {MAX_RANDOM_BYTES})"
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    while (bytes.len() as u64) < len {
        bytes.extend_from_slice(&state.next_random().to_le_bytes());
    }
    bytes.truncate(len as usize);
    Ok(bytes)
}

/// `wasi:random/random` promises cryptographic quality: it gets the TLS stack's generator.
fn secure_bytes(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| wasmtime::format_err!("no secure random source"))?;
    Ok(bytes)
}

impl random::Host for HostState {
    fn get_random_bytes(&mut self, len: u64) -> Result<Vec<u8>> {
        if len > MAX_RANDOM_BYTES {
            return Err(wasmtime::format_err!(
                "the plugin asked for {len} random bytes (at most {MAX_RANDOM_BYTES})"
            ));
        }
        secure_bytes(len as usize)
    }

    fn get_random_u64(&mut self) -> Result<u64> {
        let bytes = secure_bytes(8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes);
        Ok(u64::from_le_bytes(word))
    }
}

impl insecure::Host for HostState {
    fn get_insecure_random_bytes(&mut self, len: u64) -> Result<Vec<u8>> {
        random_bytes(self, len)
    }

    fn get_insecure_random_u64(&mut self) -> Result<u64> {
        Ok(self.next_random())
    }
}

impl insecure_seed::Host for HostState {
    fn insecure_seed(&mut self) -> Result<(u64, u64)> {
        Ok((self.next_random(), self.next_random()))
    }
}
