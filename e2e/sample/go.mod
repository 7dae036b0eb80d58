module example.com/apiping

go 1.22
