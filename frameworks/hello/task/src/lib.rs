//! The hello task: greets its input.

struct Hello;

impl stoa_guest::Task for Hello {
    fn run(input: Vec<u8>) -> Result<Vec<u8>, String> {
        let name = String::from_utf8(input).map_err(|_| "input is not UTF-8".to_string())?;
        println!("greeting {name}");
        Ok(format!("hello, {name}").into_bytes())
    }
}

stoa_guest::export_task!(Hello);
