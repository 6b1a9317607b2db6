mod lab;
mod lab_smoke;
