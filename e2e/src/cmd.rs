//! Running the real command-line tools users run (kubectl, helm, skopeo, crane) with the
//! environment's PATH and admin kubeconfig.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::env;

/// A command with the tools on PATH and the admin kubeconfig.
pub fn command(program: &str) -> Command {
    let env = env();
    let mut c = Command::new(program);
    c.env("PATH", env.path())
        .env("KUBECONFIG", &env.kubeconfig)
        .stdin(Stdio::null());
    c
}

/// Runs `program args`, feeding `stdin`; returns its output whatever its exit status.
pub fn output(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = command(program);
    c.args(args);
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    // standard input is fed from another thread while the output is read, so that a command
    // whose output fills its pipe before it has read all its input does not deadlock
    let feeder = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        std::thread::spawn(move || pipe.write_all(&input))
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    if let Some(feeder) = feeder {
        feeder
            .join()
            .expect("the stdin thread")
            .unwrap_or_else(|e| panic!("writing to {program}: {e}"));
    }
    out
}

/// Runs `program args` and returns its standard output; a non-zero exit fails the test with the
/// command's standard error.
pub fn run(program: &str, args: &[&str]) -> String {
    run_with_input(program, args, None)
}

/// [`run`] with standard input.
pub fn run_with_input(program: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let out = output(program, args, stdin);
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl args`, which must succeed.
pub fn kubectl(args: &[&str]) -> String {
    run("kubectl", args)
}

/// `kubectl args`: `Ok(stdout)` or `Err(stderr)`.
pub fn try_kubectl(args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
    let out = output("kubectl", args, stdin);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A blocking HTTP GET on loopback (health, metrics): `Some((status, body))`, or `None` when
/// nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Duration;
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition (`None` if absent).
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            (n == name).then(|| v.trim().parse().ok())?
        })
}
