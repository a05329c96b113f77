use std::process::ExitCode;

fn main() -> ExitCode {
    migrate::app::main()
}
